"""Exporters: DeepSpec draft folders in the layouts serving engines load (:mod:`deepspec.export.vllm_layout`,
:mod:`deepspec.export.speculators`), and speculators-format folders read back."""

from deepspec.export.speculators import SpeculatorsFormatError, load_any_draft, to_speculators_folder
from deepspec.export.vllm_layout import VllmExportError, to_vllm_folder

__all__ = ["SpeculatorsFormatError", "VllmExportError", "load_any_draft", "to_speculators_folder", "to_vllm_folder"]
