"""Lightning, not rsfm, detects the cluster: torchrun and SLURM variables pick its environments.

Only trainers are built: no process is started and no process group is joined.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment

from rsfm.engine.trainer import BlockFSDPStrategy, build_trainer

#: variables of a real launcher that would leak into the simulated ones
LAUNCHER_VARS = [
    k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in {"RANK", "LOCAL_RANK", "WORLD_SIZE"}
]

#: rank 0 of 2 nodes x 2 processes, as ``torchrun --nnodes 2 --nproc-per-node 2`` sets it
TORCHRUN = {
    "RANK": "0",
    "LOCAL_RANK": "0",
    "GROUP_RANK": "0",
    "LOCAL_WORLD_SIZE": "2",
    "WORLD_SIZE": "4",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "rsfm-test",
}

#: task 0 of ``srun`` on 2 nodes x 2 tasks (``#SBATCH --nodes 2 --ntasks-per-node 2``)
SLURM = {
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_JOB_NAME": "rsfm-pretrain",
    "SLURM_JOB_ID": "1234",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "node[01-02]",
}


@pytest.fixture(autouse=True)
def restore_environment():
    """Put os.environ back exactly: building a trainer lets Lightning write variables of its own
    (e.g. ``MASTER_PORT``, ``NODE_RANK``), which would send later DDP subprocesses of the test
    session to a rendezvous that never completes."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def trainer_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], strategy: str = "ddp"):
    for key in LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    recipe = {"accelerator": "cpu", "devices": 2, "num_nodes": 2, "strategy": strategy, "enable_progress_bar": False}
    return build_trainer(tmp_path, recipe, {"every_n_epochs": 1})


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_variables_select_torchelastic(monkeypatch, tmp_path: Path, strategy: str) -> None:
    trainer = trainer_in(monkeypatch, tmp_path, TORCHRUN, strategy)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, TorchElasticEnvironment)
    assert env.creates_processes_externally  # torchrun started the processes, not Lightning nor rsfm
    assert trainer.num_nodes == 2 and trainer.num_devices == 2 and trainer.world_size == 4
    assert isinstance(trainer.strategy, BlockFSDPStrategy) == (strategy == "fsdp")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_slurm_variables_select_slurm(monkeypatch, tmp_path: Path, strategy: str) -> None:
    trainer = trainer_in(monkeypatch, tmp_path, SLURM, strategy)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert env.creates_processes_externally  # srun started them
    assert env.main_address == "node01"
    assert trainer.num_nodes == 2 and trainer.world_size == 4


def test_interactive_slurm_shell_is_not_a_cluster(monkeypatch, tmp_path: Path) -> None:
    # an `salloc` shell (job name "bash") is one machine whose processes Lightning launches itself
    trainer = trainer_in(monkeypatch, tmp_path, {**SLURM, "SLURM_JOB_NAME": "bash"})
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)
    assert not trainer.strategy.cluster_environment.creates_processes_externally
