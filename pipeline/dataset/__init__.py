"""What a build leaves: the record per tile and records.jsonl (records, record_store), selection
(tile_table, selection, balance_report), WebDataset shards and the manifest (shards, shards_import),
and the markdown of its reports."""
