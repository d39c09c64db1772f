"""Shared pytest setup: one intra-op thread (tests are many small ops; threads only contend)."""

import torch

torch.set_num_threads(1)
