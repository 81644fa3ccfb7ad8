"""Label and caption noise, fixed per sample. Torch-free."""
