"""DICOM in, NIfTI or DICOM SEG out: DICOM folders and zips, and DICOMweb studies (QIDO/WADO/STOW-RS)."""
