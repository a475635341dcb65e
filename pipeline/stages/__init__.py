"""The build's stages, as functions over tiles: the registry (their order, which run models, what each
sets), parse (phrases), match (categories, and categorize_file for a captions file), merge and domain.
The model stages' backends are pipeline/models/."""
