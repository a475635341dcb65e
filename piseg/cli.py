"""The `piseg` command: Pi-Seg model, training and evaluation tools."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from piseg.prompts import PROMPT_TEMPLATE, class_prompts
from taxonomy.loader import TaxonomyError, load_taxonomy

app = typer.Typer(name="piseg", help="Pi-Seg: open-vocabulary remote-sensing segmentation.", add_completion=False)


@app.callback()
def _root() -> None:
    """Pi-Seg: open-vocabulary remote-sensing segmentation."""


@app.command()
def classes(
    taxonomy: str = typer.Argument(..., help="Bundled taxonomy name (ovrsis95k, dlrsd, ...) or YAML path."),
    template: str = typer.Option(PROMPT_TEMPLATE, help="Prompt template with one {} for the class name."),
) -> None:
    """Print a vocabulary's mask ids, class names and the text prompts the model is given."""
    try:
        vocabulary = load_taxonomy(taxonomy)
    except TaxonomyError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    table = Table("id", "class", "prompt", title=f"{vocabulary.name} ({vocabulary.version})", title_justify="left")
    for category, prompt in zip(vocabulary.categories, class_prompts(vocabulary, template)):
        table.add_row(str(category.index), category.name, prompt)
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
