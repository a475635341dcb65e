"""The authors' released weights: converting their detectron2 checkpoints into Pi-Seg checkpoints (`convert`)."""
