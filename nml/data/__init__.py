"""Streaming data: the one WebDataset pipeline, resumable loaders, the shard DataModules."""
