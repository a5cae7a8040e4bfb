"""Stage 3: preprocessing (crop, normalise, resample, foreground locations) and the preprocessed-data store."""
