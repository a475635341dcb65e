"""Evaluation the paper's way: benchmark datasets (`benchmarks`, defined in benchmarks.yaml), metrics, the
resumable evaluation, reports beside the paper's numbers (`paper`, paper_results.yaml), the reproduction
of its tables from the released weights, and parameter / FLOP / speed counts (Table XII)."""
