"""Model sharing: export trained models as a zip, install a zip, download one by URL, with limits on what a zip holds."""
