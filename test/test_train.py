"""Tests of the training configuration, schedule, checkpoints and the two-phase loop (CPU).

The runs use a tiny network (dim 8, one head, one block per stage) on 10 random 32x32 patches
(8 trained, 2 held out), batch 2-4, one epoch of each phase with 2-3 steps.
"""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from sfdfuse_core.cli import main as cli_main
from sfdfuse_core.model import build_model
from sfdfuse_core.train.checkpoint import REQUIRED_KEYS, CheckpointError, load_checkpoint
from sfdfuse_core.train.config import ConfigError, TrainConfig, load_config
from sfdfuse_core.train.trainer import augment_pairs, lr_factor, main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / 'training' / 'sfdfuse.yaml'
TINY = ['model.dim=8', 'model.num_heads=1', 'model.encoder_restormer_blocks=1',
        'model.encoder_convformer_blocks=1', 'model.decoder_restormer_blocks=1',
        'model.decoder_convformer_blocks=1', 'model.detail_nodes=1', 'phase1_epochs=1',
        'phase2_epochs=1', 'max_steps_per_epoch=2', 'val_patches=2', 'num_workers=0',
        'batch_size=4', 'log_every=1', 'progress=false', 'save_every_steps=0']


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One intra-op thread: tiny convolutions gain nothing from more, and on a shared 2-core
    machine two threads spinning against other processes made these runs 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def patches(tmp_path_factory) -> Path:
    """Ten random 32x32 patch pairs in the layout ``sfdfuse prepare`` writes."""
    path = tmp_path_factory.mktemp('data') / 'tiny.h5'
    rng = np.random.default_rng(0)
    with h5py.File(path, 'w') as h5:
        h5['ir'] = rng.integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
        h5['vi'] = rng.integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
    return path


def _config(patches: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(RECIPE, TINY + list(extra), data=str(patches), out=str(out))


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_defaults_and_overrides():
    cfg = load_config(RECIPE)
    assert cfg == TrainConfig()  # the YAML states the defaults, which are the published recipe
    assert (cfg.phase1_epochs, cfg.phase2_epochs, cfg.batch_size) == (30, 60, 8)
    assert (cfg.lr, cfg.lr_step, cfg.lr_gamma, cfg.lr_min, cfg.clip_grad_norm) == (
        1e-4, 10, 0.5, 1e-6, 0.01)
    assert (cfg.loss.ssim, cfg.loss.decomp, cfg.loss.gradient, cfg.loss.fusion_gradient) == (
        5.0, 2.0, 5.0, 10.0)
    cfg = load_config(RECIPE, ['phase1_epochs=1', 'model.dim=16', 'loss.decomp=1.5',
                               'lr=2e-4'])
    assert (cfg.phase1_epochs, cfg.model.dim, cfg.loss.decomp, cfg.lr) == (1, 16, 1.5, 2e-4)
    with pytest.raises(ConfigError, match=r"unknown config keys: \['phase3_epochs'\]"):
        load_config(RECIPE, ['phase3_epochs=1'])
    with pytest.raises(ConfigError, match='unknown loss keys'):
        load_config(RECIPE, ['loss.alpha=1'])
    with pytest.raises(ConfigError, match='unknown SFDFuseConfig keys'):
        load_config(RECIPE, ['model.width=1'])
    with pytest.raises(ConfigError, match='batch_size must be int'):
        load_config(RECIPE, ['batch_size=eight'])
    with pytest.raises(ConfigError, match='key=value'):
        load_config(RECIPE, ['phase1_epochs'])


def test_learning_rate_schedule_matches_the_recipe():
    cfg = TrainConfig()
    assert [lr_factor(e, 'encoder', cfg) for e in (0, 9, 10, 29, 30)] == [1, 1, .5, .25, .125]
    assert lr_factor(89, 'decoder', cfg) == pytest.approx(0.01)  # floor 1e-6 / 1e-4
    # the fusion layers' StepLR starts with phase II (epoch 30)
    assert [lr_factor(e, 'base_fusion', cfg) for e in (0, 30, 39, 40, 89)] == [
        1, 1, 1, .5, .03125]


def test_tiny_run_writes_everything(patches, tmp_path):
    from sfdfuse_core.weights import load_model

    out = tmp_path / 'run'
    result = main(_config(patches, out))
    assert result.finished and result.step == 4 and result.epoch == 2
    for name in ('config.yaml', 'last.pt', 'phase1.pt', 'phase2.pt', 'loss_curves.png',
                 'final.safetensors'):
        assert (out / name).is_file(), name
    assert list((out / 'tb').glob('events.out.tfevents.*'))
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    assert saved['model']['dim'] == 8 and saved['phase1_epochs'] == 1
    assert load_config(out / 'config.yaml') == _config(patches, out)
    ckpt = load_checkpoint(out / 'last.pt')
    assert set(REQUIRED_KEYS) <= set(ckpt)
    assert (ckpt['epoch'], ckpt['step'], ckpt['phase'], ckpt['finished']) == (2, 4, 2, True)
    assert ckpt['config']['dim'] == 8  # the network config, as weights.load_model reads it
    phase1 = load_checkpoint(out / 'phase1.pt')
    assert (phase1['phase'], phase1['step']) == (2, 2)  # saved at the start of phase II
    epochs = ckpt['metrics']['epochs']
    assert [e['phase'] for e in epochs] == [1, 2] and epochs[0]['val']['loss'] > 0
    assert {'recon_vi', 'decomp', 'gradient'} <= set(epochs[0]['train'])
    assert {'intensity', 'gradient', 'ssim'} <= set(epochs[1]['train'])
    model = load_model(out / 'final.safetensors')
    assert _same_state(model.state_dict(), ckpt['model'])
    fused = model(torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24))
    assert fused.shape == (1, 1, 20, 24)
    # phase I leaves the fusion layers as initialised; phase II trains them
    torch.manual_seed(0)
    init = build_model(_config(patches, out).model).state_dict()
    after1 = load_checkpoint(out / 'phase1.pt')['model']
    fusion = [k for k in init if k.startswith(('base_fusion.', 'detail_fusion.'))]
    assert fusion and all(torch.equal(init[k], after1[k]) for k in fusion)
    assert not torch.equal(init['encoder.patch_embed.weight'],
                           after1['encoder.patch_embed.weight'])
    assert any(not torch.equal(after1[k], ckpt['model'][k]) for k in fusion)
    with pytest.raises(ConfigError, match='already holds a run'):
        main(_config(patches, out))


class _Crash(RuntimeError):
    pass


def test_augmentation_keeps_pairs_aligned_and_in_range():
    torch.manual_seed(0)
    vi = torch.rand(64, 1, 8, 8)
    ir = vi.clone()  # identical images: shared flips keep them identical without exposure changes
    same_vi, same_ir = augment_pairs(vi, ir, flip=False, gamma=0.0, seed=1)
    assert same_vi is vi and same_ir is ir
    f_vi, f_ir = augment_pairs(vi, ir, flip=True, gamma=0.0, seed=1)
    assert torch.equal(f_vi, f_ir) and not torch.equal(f_vi, vi)
    flipped = [torch.equal(f_vi[i], vi[i].flip(-1)) for i in range(64)]
    assert 10 < sum(flipped) < 54  # about half are flipped left-right (some also up-down)
    g_vi, g_ir = augment_pairs(vi, ir, flip=False, gamma=0.7, seed=1)
    assert 0.0 <= float(g_vi.min()) and float(g_vi.max()) <= 1.0
    # per-image exponents: log(g) / log(x) is one constant per patch, in [-0.7, 0.7] as log
    ratio = torch.log(torch.log(g_vi) / torch.log(vi))
    spread = ratio.flatten(1).max(1).values - ratio.flatten(1).min(1).values
    assert float(spread.max()) < 1e-3 and float(ratio.abs().max()) <= 0.7 + 1e-4
    assert not torch.equal(g_vi, g_ir)  # drawn for each modality
    again = augment_pairs(vi, ir, flip=True, gamma=0.7, seed=1)
    other = augment_pairs(vi, ir, flip=True, gamma=0.7, seed=2)
    assert torch.equal(again[0], augment_pairs(vi, ir, flip=True, gamma=0.7, seed=1)[0])
    assert not torch.equal(again[0], other[0])


def test_exposure_augmentation_moves_chosen_patch_means_into_the_range():
    torch.manual_seed(0)
    # dim patches, as MSRS infrared: means near 0.1
    vi = 0.2 * torch.rand(400, 1, 16, 16) + 0.01
    ir = vi.clone()
    e_vi, e_ir = augment_pairs(vi, ir, flip=False, gamma=0.0, seed=3, exposure=(0.5, 0.3, 0.7))
    for before, after in ((vi, e_vi), (ir, e_ir)):
        assert 0.0 <= float(after.min()) and float(after.max()) <= 1.0
        changed = (after - before).flatten(1).abs().amax(1) > 0
        assert 140 < int(changed.sum()) < 260  # about half of 400, each modality on its own
        means = after.mean(dim=(1, 2, 3))[changed]
        # x ** g moves the mean to the drawn level up to Jensen's gap (a few hundredths here)
        assert float(means.min()) > 0.25 and float(means.max()) < 0.75
        assert float(means.std()) > 0.08  # levels spread over the range, not one value
        # one exponent per patch: log(after) / log(before) is constant within a patch
        ratio = torch.log(after[changed]) / torch.log(before[changed])
        assert float((ratio.flatten(1).amax(1) - ratio.flatten(1).amin(1)).max()) < 1e-3
    assert not torch.equal(e_vi, e_ir)
    # off by default, and the draws of the older augmentations are unchanged by it
    assert augment_pairs(vi, ir, flip=False, gamma=0.0, seed=3)[0] is vi
    plain = augment_pairs(vi, ir, flip=True, gamma=0.5, seed=4)
    both = augment_pairs(vi, ir, flip=True, gamma=0.5, seed=4, exposure=(1e-9, 0.3, 0.7))
    assert torch.equal(plain[0], both[0]) and torch.equal(plain[1], both[1])


def test_exposure_augmentation_settings_are_checked():
    with pytest.raises(ConfigError, match='augment_exposure is a probability'):
        TrainConfig(augment_exposure=1.5)
    with pytest.raises(ConfigError, match='augment_exposure_low'):
        TrainConfig(augment_exposure=0.5, augment_exposure_low=0.8, augment_exposure_high=0.7)


def test_resume_is_exact_after_a_crash_and_after_a_step_budget(patches, tmp_path):
    # with augmentation on: its draws are seeded by the step, so a resume repeats them
    extra = ['batch_size=2', 'max_steps_per_epoch=3', 'save_every_steps=1', 'augment_flip=true',
             'augment_gamma=0.5']
    reference = main(_config(patches, tmp_path / 'ref', *extra))
    want = load_checkpoint(tmp_path / 'ref' / 'last.pt')

    # a crash during step 5 (phase II, second batch): the last save was after step 4
    def crash(run):
        if run.step == 5:
            raise _Crash('simulated kill')
    out = tmp_path / 'crashed'
    with pytest.raises(_Crash):
        main(_config(patches, out, *extra), on_step=crash)
    assert load_checkpoint(out / 'last.pt')['step'] == 4
    resumed = main(_config(patches, out, *extra), resume=True)
    got = load_checkpoint(out / 'last.pt')
    assert resumed.finished and resumed.step == reference.step == 6
    assert _same_state(got['model'], want['model'])
    assert [e['train'] for e in got['metrics']['epochs']] == \
        [e['train'] for e in want['metrics']['epochs']]

    # a step budget that ends phase I, then a resume with the budget lifted
    out = tmp_path / 'budget'
    stopped = main(_config(patches, out, *extra, 'stop_after_steps=3'))
    assert not stopped.finished and stopped.step == 3 and stopped.epoch == 1
    assert not (out / 'final.safetensors').exists()
    main(_config(patches, out, *extra), resume=True)
    assert _same_state(load_checkpoint(out / 'last.pt')['model'], want['model'])

    # changing what the run computes is refused
    with pytest.raises(ConfigError, match=r"settings differ.*'lr'"):
        main(_config(patches, out, *extra, 'lr=1e-3'), resume=True)


def test_truncated_checkpoint_is_named_and_the_previous_one_used(patches, tmp_path, capsys):
    out = tmp_path / 'run'
    main(_config(patches, out, 'batch_size=2', 'stop_after_steps=3', 'max_steps_per_epoch=3',
                 'save_every_steps=1'))
    last = out / 'last.pt'
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=f'corrupt or truncated checkpoint {last}'):
        load_checkpoint(last)
    result = main(_config(patches, out, 'batch_size=2', 'max_steps_per_epoch=3',
                          'save_every_steps=1'), resume=True)
    assert f'corrupt or truncated checkpoint {last}' in capsys.readouterr().out
    assert result.finished and result.step == 6  # continued from last.prev.pt (step 2)
    for name in ('last.pt', 'last.prev.pt'):
        (out / name).write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match=r'(?s)last\.pt .*last\.prev\.pt '):
        main(_config(patches, out), resume=True)


def test_refuses_evaluation_data_and_missing_data(tmp_path):
    bad = tmp_path / 'ivf' / 'test' / 'TNO.h5'
    with pytest.raises(ConfigError, match='evaluation'):
        main(load_config(RECIPE, TINY, data=str(bad), out=str(tmp_path / 'r')))
    with pytest.raises(ConfigError, match='no training data'):
        main(load_config(RECIPE, TINY, out=str(tmp_path / 'r')))


def test_cli_train_and_resume(patches, tmp_path, capsys):
    out = tmp_path / 'cli'
    args = ['train', '--config', str(RECIPE), '--data', str(patches), '--out', str(out),
            '--device', 'cpu', '--max-steps-per-epoch', '1']
    for item in TINY:
        args += ['--set', item]
    assert cli_main(args + ['--set', 'stop_after_steps=1']) == 0
    assert 'stopped (resume with --resume)' in capsys.readouterr().out
    # --resume without --config reads the run's config.yaml; the step budget is lifted
    assert cli_main(['train', '--out', str(out), '--resume', '--set', 'stop_after_steps=0']) == 0
    assert 'finished: 2 steps' in capsys.readouterr().out
    assert cli_main(args + ['--set', 'nonsense=1']) == 2
    assert 'unknown config keys' in capsys.readouterr().err


def test_several_patch_files_train_as_one_set(patches, tmp_path):
    """``data: a.h5,b.h5`` concatenates the files (a remote run can carry its data in pieces)."""
    from sfdfuse_core.train.trainer import data_paths

    assert data_paths(f' {patches} , {patches},') == [str(patches), str(patches)]
    out = tmp_path / 'two'
    config = load_config(RECIPE, TINY + ['val_patches=15'], data=f'{patches},{patches}',
                         out=str(out))
    result = main(config)  # 20 patches: 15 held out leaves 5, so a single file would refuse
    assert result.finished
    bad = tmp_path / 'ivf' / 'test' / 'TNO.h5'
    with pytest.raises(ConfigError, match='evaluation'):
        main(load_config(RECIPE, TINY, data=f'{patches},{bad}', out=str(tmp_path / 'r')))
