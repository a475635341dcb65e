"""Class-name prompts for the CLIP text encoder, as the released Pi-Seg / CAT-Seg code builds them."""

from __future__ import annotations

from taxonomy.loader import Category, Taxonomy

PROMPT_TEMPLATE = "A photo of a {} in the scene"  # the released code's template (the paper writes "a photo of {class}")


def class_prompts(taxonomy: Taxonomy, template: str = PROMPT_TEMPLATE) -> list[str]:
    """One prompt per class, in mask-id order; comma names ("vehicle, car") use their first part."""
    return [template.format(category.prompt_name) for category in taxonomy.categories]


def name_prompts(class_names: list[str], template: str = PROMPT_TEMPLATE) -> list[str]:
    """The same rule for free-form class names (open-vocabulary prediction)."""
    return [template.format(Category(name=name, index=i).prompt_name) for i, name in enumerate(class_names)]
