"""Applying a model to whole images: the released test-time scheme (`scheme`, shared by validation,
prediction and evaluation) and open-vocabulary prediction with a checkpoint (`predict`)."""
