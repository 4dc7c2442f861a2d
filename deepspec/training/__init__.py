"""Training: data over the target cache, checkpoints, schedule, metrics, distributed setup, trainers.

Entry point: ``train.py`` (``run_training``); the loop itself is :class:`deepspec.training.trainer.Trainer`.
"""
