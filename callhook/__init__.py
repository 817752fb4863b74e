"""callhook: WhatsApp Business voice calls in production (the CLI, logging and settings all processes share)."""
