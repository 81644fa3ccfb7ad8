"""The embedded glyph benchmark, built only from data that ships in installed packages. Torch-free."""
