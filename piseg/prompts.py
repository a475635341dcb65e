"""Class-name prompts for the CLIP text encoder, as the released Pi-Seg / CAT-Seg code builds them."""

from __future__ import annotations

from taxonomy.loader import Taxonomy

PROMPT_TEMPLATE = "A photo of a {} in the scene"  # the released code's template (the paper writes "a photo of {class}")


def class_prompts(taxonomy: Taxonomy, template: str = PROMPT_TEMPLATE) -> list[str]:
    """One prompt per class, in mask-id order; comma names ("vehicle, car") use their first part."""
    return [template.format(category.prompt_name) for category in taxonomy.categories]
