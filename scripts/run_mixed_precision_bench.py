#!/usr/bin/env python
"""Mixed-precision MoE dispatch strategies: slow_path, fast_uniform, fast_mixed, hybrid, max_bits_padded on the
same routing and quantized weights (time, graph-replay time, launches, weight bytes, bandwidth, peak memory,
extra memory, error against slow_path). The framework is benchmarks/mixed_precision_bench.py; see its
docstring for the models and recipes.

    python scripts/run_mixed_precision_bench.py                       # synthetic model, one token
    python scripts/run_mixed_precision_bench.py --full --model glm4   # every strategy, 1/16/256 tokens
    python scripts/run_mixed_precision_bench.py --strategies slow_path fast_mixed hybrid --batch-size 4
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mixed_precision_bench import main  # noqa: E402

if __name__ == "__main__":
    main(name="run_mixed_precision_bench")
