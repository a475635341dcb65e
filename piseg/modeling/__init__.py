"""The Pi-Seg network (`model.build_model(config)`): CLIP backbone, semantic-aware perturbation modules,
cost aggregation, class prompts; and the training-free zero-shot CLIP floor with the same interface."""
