"""Proposals scored against labels: masks against labelled masks (build_quality), categories against
labelled captions (category_eval)."""
