"""callhook: WhatsApp Business voice calls in production (CLI, logging, settings shared by all processes)."""
