"""Exports of a build or annotate output folder for other tools (issue #17, items 3 and 5).

    vectors.py   instances and semantic regions as polygons in the source CRS (GeoPackage, GeoJSON)
    cog.py       Cloud-Optimized GeoTIFF checks (the masks themselves are written as COGs by
                 pipeline.raster.outputs.write_mask_geotiff and pipeline.raster.stitch)
    stac.py      a STAC collection describing the output's rasters and masks
    hf.py        a Hugging Face `datasets` layout of the shards, with a dataset card
    cli.py       `ovrsis export vectors|stac|hf`

They read the output folder's contracts (docs/architecture.md) and never change it.
"""
