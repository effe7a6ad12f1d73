"""widthwise server: settings, HTTP API, scheduler, runtime, metrics and the CLI."""
