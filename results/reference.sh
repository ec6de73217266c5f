#!/usr/bin/env bash
# Every command that produced results/reference, in order (python -m suite.report
# --results results/reference --out paper then regenerates paper/). Run it from a clean,
# committed tree: each run's env.json records the commit and whether the tree was clean.
# Sweeps skip completed runs, so an interrupted sitting resumes where it stopped.
#   bash results/reference.sh [results folder, default results/reference]
# On this machine (2 CPU cores, no GPU): parts 1 and 2 took about 95 minutes of sweep time
# (their train clocks add up to 38 minutes: start-up and evaluation are the rest); README
# "The reference result set" gives each part's measured time and why this scale.
set -uo pipefail
out=${1:-results/reference}
status=0  # a failed point fails the script at the end, after every other sweep ran
sweep() { python -m suite.run -m "$@" results_dir="$out" || status=$?; }

# 1. Fashion-MNIST (60,000 + 10,000 real 28x28 images), pre-act ResNet-101 x1/8 (stage 3
#    keeps its 22 partitionable blocks) on 14x14 inputs (data.downsample=2: a quarter of
#    the compute), 2 data-epochs, the ResIST recipe's SGD (lr 0.03, momentum 0.9, weight
#    decay 5e-4, /10 at 50 % and 75 %), batch 128 per worker, l = 50, optimizer reset
#    each round as in the released code.
resnet=(data=fashion_mnist data.downsample=2 optim.lr=0.03 train.data_epochs=2
        train.eval_every=0.5 workers=2,4 seed=0,1,2)
sweep protocol=ddp "${resnet[@]}"
sweep protocol=localsgd,resist ++protocol.local_steps=50 ++protocol.optimizer_state=reset "${resnet[@]}"

# 2. Fashion-MNIST, the IST papers' MLP shape (2 layers, no biases, batch-statistics BN)
#    at width 1024, their recipe: plain SGD lr 0.01, no augmentation, batch 128 per
#    worker, l = 20; 5 data-epochs.
mlp=(data=fashion_mnist model=mlp data.augment=false optim.lr=0.01 optim.momentum=0
     optim.weight_decay=0 optim.schedule=constant train.data_epochs=5 workers=2,4,8
     seed=0,1,2)
sweep protocol=ddp "${mlp[@]}"
sweep protocol=localsgd,ist ++protocol.local_steps=20 "${mlp[@]}"

# 3. The embedded default (scikit-learn's 1,797 8x8 digits: toy scale), every protocol.
sweep protocol=ddp,localsgd,resist,ist,auxnet,diloco,powersgd workers=2,4 seed=0,1,2
sweep protocol=ddp,localsgd model=mlp workers=2,4 seed=0,1,2

# 4. Beside the Fashion-MNIST ResNet runs, one seed each (n = 1): PowerSGD and AuxNet
#    with the same SGD recipe, DiLoCo with its paper's inner AdamW (defaults).
sweep protocol=powersgd,auxnet data=fashion_mnist data.downsample=2 optim.lr=0.03 \
    train.data_epochs=2 train.eval_every=0.5 workers=2 seed=0
sweep protocol=diloco data=fashion_mnist data.downsample=2 train.data_epochs=2 \
    train.eval_every=0.5 workers=2 seed=0
exit "$status"
