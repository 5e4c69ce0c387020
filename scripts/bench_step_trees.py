"""One tree's SAE training step, timed: bench/sae_train.py's make_ours (paper recipe, d 512, batch
4096, n 4096, bf16 where fast), 6 steps after 2 untimed from initialisation (the dense path), in one
process. Run from <tree> with PYTHONPATH=<tree>: python <this checkout>/scripts/bench_step_trees.py; prints JSON."""
import json, os, sys, time, statistics
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import torch
import sae_train as B

x = B.synthetic_acts(16 * B.BATCH)
tr = B.make_ours(4096, B.TensorSource(x, B.BATCH, seed=0), n_steps=10**6)
for _ in range(2):
    tr.train_step()
wall, cpu = [], []
for _ in range(6):
    t, c = time.perf_counter(), time.process_time()
    tr.train_step()
    wall.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
print(json.dumps({"tree": os.getcwd(), "wall_median_s": statistics.median(wall), "cpu_median_s": statistics.median(cpu),
                  "tok_s": B.BATCH / statistics.median(wall)}))
