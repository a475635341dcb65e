"""Raster I/O (rasterio, GDAL): tiles read out of source rasters (ingest, tiling, gdal_env), masks
written as PNG and GeoTIFF (outputs), per-raster mosaics (stitch), label rasters made elsewhere
(label_rasters). The only part of the pipeline that imports rasterio at module level."""
