"""The target cache: hidden states captured from the target once, read by every training run.

The last step of stage 1 (data preparation), between the training data and training. The modules,
and what each may import:

* :mod:`deepspec.cache.format` -- the on-disk format both sides agree on: folder and shard layout, index
  records, sizes, the identity check (target fingerprint, layers, data, settings) and manifest validation;
* :mod:`deepspec.cache.writer` -- :class:`~deepspec.cache.writer.TargetCacheWriter` (one per rank) and
  :func:`~deepspec.cache.writer.finalize_target_cache`; imports ``format``;
* :mod:`deepspec.cache.reader` -- :class:`~deepspec.cache.reader.TargetCache`, the mmap-backed reader the
  trainer uses; imports ``format`` only, never the writer;
* :mod:`deepspec.cache.build` -- the whole stage (tokenize, run the target, write, finalize), behind
  ``scripts/data/prepare_target_cache.py``; imports ``format``, ``writer`` and ``reader`` where used.

This file imports nothing, so importing one module (the reader in a DataLoader worker, the build's cheap
checks before torch is loaded) never pulls in the others.
"""
