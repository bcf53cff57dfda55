"""Training data: the procedural shapes dataset (`shapes`), its scene parser (`scene_parser`) and the official
JSONL image-caption layout (`jsonl`). Import the module you need; this package imports nothing itself."""
