"""Shared test set-up: Triton runs under its interpreter on machines without CUDA (must be set before triton is imported)."""
import os, sys
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(min(2, os.cpu_count() or 1))

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real training runs through the CLI (deselect with -m 'not slow')")
