"""Cases in, files or arrays out: input checks, the memory plan's choice of path, the folder pipeline, arrays."""
