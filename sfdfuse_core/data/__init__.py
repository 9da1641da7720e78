"""Training data: cutting image pairs into HDF5 patch files, and reading them back."""
from sfdfuse_core.data.dataset import H5PatchDataset, PatchDatasetError
from sfdfuse_core.data.prepare import (PrepareError, PrepareReport, low_contrast,
                                       patch_positions, prepare_patches, to_luma)

__all__ = ['H5PatchDataset', 'PatchDatasetError', 'PrepareError', 'PrepareReport',
           'low_contrast', 'patch_positions', 'prepare_patches', 'to_luma']
