"""Exporters: DeepSpec draft folders in the layouts serving engines load (see :mod:`deepspec.export.vllm_layout`)."""

from deepspec.export.vllm_layout import VllmExportError, to_vllm_folder

__all__ = ["VllmExportError", "to_vllm_folder"]
