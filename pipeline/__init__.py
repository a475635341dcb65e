"""The dataset build as plain functions over batches of tiles; knows nothing of Prefect or Label Studio.

    files/     what every writer shares: atomic writes and the output folder's lock, its layout, JSON
               lines, names confined to their folder
    raster/    raster I/O: reading tiles out of GeoTIFFs and images (ingest, tiling, GDAL options),
               writing masks (PNG, GeoTIFF), stitched mosaics, label rasters made elsewhere
    stages/    the stages themselves, in registry order: parse captions (phrases), match them to the
               taxonomy (categories), merge instances into a mask, tag the domain
    models/    the model stages' backends (caption, detect, segment) behind small protocols
    build/     running them: the build configuration, the build plan, the Annotator over a batch, the
               stage cache, batching and thread budgets
    dataset/   what a build leaves: records, selection, the balance report, shards and manifest,
               imported shards, report markdown
    quality/   proposals scored against labelled masks and labelled captions
    export/    the output folder for other tools (vectors, STAC, Hugging Face, the HTML gallery)
    cli/       the `ovrsis categories|annotate|view` commands and the exit rule every command follows

Imports go down the list's dependency order only (docs/architecture.md, "Layers"); no circles.
"""
