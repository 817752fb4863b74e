"""callhook: WhatsApp Business voice calls in production (CLI, logging and settings shared by all processes)."""
