"""Training SFDFuse: configuration, losses, checkpoints and the two-phase loop."""
from sfdfuse_core.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sfdfuse_core.train.config import ConfigError, TrainConfig, load_config, save_config
from sfdfuse_core.train.losses import (FusionLoss, LossWeights, ReconstructionLoss, correlation,
                                       decomposition_loss, fusion_loss, fusion_targets,
                                       gradient_loss, sobel_magnitude, spatial_gradient,
                                       ssim_loss)
from sfdfuse_core.train.trainer import RunResult, evaluate, main, train_one_epoch

__all__ = ['CheckpointError', 'ConfigError', 'FusionLoss', 'LossWeights', 'ReconstructionLoss',
           'RunResult', 'TrainConfig', 'correlation', 'decomposition_loss', 'evaluate',
           'fusion_loss', 'fusion_targets', 'gradient_loss', 'load_checkpoint', 'load_config',
           'main', 'save_checkpoint', 'save_config', 'sobel_magnitude', 'spatial_gradient',
           'ssim_loss', 'train_one_epoch']
