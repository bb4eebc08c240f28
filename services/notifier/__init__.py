"""The notifier: intents and request events in, Slack / e-mail / webhook messages out."""
