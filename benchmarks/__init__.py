"""nml's benchmarks: scripts that print figures as JSON, run from the repository root as
``python -m benchmarks.<name> [options]`` (``--help`` for each). What they measure, and the
figures on the machines that measured them: BENCHMARKS.md.

* ``pipeline``: the shard pipeline's samples/s per core against the JPEG decode limit; the cost of
  label noise.
* ``peers``: the pipeline against timm's and open_clip's own loaders on the same shards.
* ``study``: the quickstart study, stages one after another.
* ``study_pretrain``: the study's pre-training against a bare loop of the same model.
* ``spectrum``: the exact spectrum accumulator against SVD of the gathered features.
* ``tuning_cache``: tuning on cached features against tuning through the backbone.
* ``gpu_step`` / ``gpu_pipeline``: on a GPU, nml's training step and JPEG pipeline against bare loops.

``common`` holds what they share: alternated timing repeats and synthetic JPEG shards.
"""
