"""Label Studio audit queues, corrections and audit statistics (the only importer of label_studio_sdk)."""
