"""Category vocabularies as data: YAML files, their loader/validator, and the caption-to-category matcher."""

from taxonomy.loader import Category, Taxonomy, TaxonomyError, bundled_taxonomies, load_taxonomy

__all__ = ["Category", "Taxonomy", "TaxonomyError", "bundled_taxonomies", "load_taxonomy"]
