#!/bin/bash
# SelectiveMAE pretraining on 2 nodes x 8 GPUs under SLURM: `sbatch configs/cluster/slurm_pretrain.sh`.
#
# srun starts one task per GPU (16 in all); Lightning reads SLURM's variables (SLURM_NTASKS,
# SLURM_PROCID, SLURM_LOCALID, SLURM_NODELIST...) and joins them into one run. rsfm launches
# nothing itself. trainer.num_nodes and trainer.devices must equal --nodes and
# --ntasks-per-node. data.batch_size is per GPU: the effective batch here is 16 x 256 = 4096
# and the learning rate follows it (optim.blr x batch / 256, as in MAE: He et al., CVPR 2022).
#
# ViT-L (or larger) with FSDP, one shard unit per transformer block:
#   sbatch configs/cluster/slurm_pretrain.sh model.init_args.size=large trainer.strategy=fsdp
# and, if activations do not fit, trainer.strategy=fsdp_activation_checkpointing.
# Extra arguments are passed on as recipe overrides.
#
# The job resumes by itself: rerun the same command (resume: auto) and it continues from the
# newest checkpoint of runs/<run_name>.

#SBATCH --job-name=rsfm-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
export OMP_NUM_THREADS=1

srun rsfm pretrain --config configs/pretrain/selective_mae_vit_base.yaml \
    trainer.accelerator=gpu \
    trainer.num_nodes="${SLURM_NNODES}" \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" \
    data.init_args.num_workers="${SLURM_CPUS_PER_TASK}" \
    "$@"
