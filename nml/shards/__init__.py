"""WebDataset shards on disk: specs and sizes, member parsing, writers, the benchmark manifest. Torch-free."""
