"""What every writer of the output folder shares, light enough for any reader to import (no numpy, no
GDAL): files written whole or not at all and the folder's lock (atomic), its layout (layout), JSON
lines read a line at a time (jsonl), and names from files or servers confined to a folder (safe_names)."""
