"""Model backends behind small protocols: captioner, text-prompted detector, box-prompted segmenter."""


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings from transformers in batch jobs."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
