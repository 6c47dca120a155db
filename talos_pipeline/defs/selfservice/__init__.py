"""Self-service variants: the sensor that turns users' requests (posted to `serve/`) into runs."""
