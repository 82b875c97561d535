"""anGPT at 12 x 768 (unless the flags say otherwise) in the setting of tests/test_full_width.py (1,024-token
vocabulary from the Shakespeare train split, 64-token sequences, 8 per step, bf16, 10 steps, the real train loop): per run the train losses and the
stream's norm before the head (hidden_norm, logged every step). One line per run:

    python records/angpt_depth/full_depth.py "--angpt_norm=input" "--angpt_norm=output" ...   # flags per run
"""
import os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests"))
import conftest  # noqa: E402,F401  (the tests' set-up: threads, paths)
import test_full_width as FW  # noqa: E402

class Folders:  # what the fixture's tmp_path_factory provides
    def mktemp(self, name):
        return Path(tempfile.mkdtemp(prefix=name))

shards = FW.small_vocab_shards.__wrapped__(Folders())
for i, flags in enumerate(sys.argv[1:]):
    t0 = time.time()
    a, train, hidden = FW.train_full_width(shards, f"run{i}", ["--arch=angpt", "--n_layer=12"] + flags.split(), steps=10)
    print(f"{flags}: {time.time() - t0:.0f}s train {' '.join(f'{x:.3f}' for x in train)} | hidden_norm "
          f"{' '.join(f'{x:.2f}' for x in hidden)}", flush=True)
