"""The CMS worker protocol: WebSocket handler, subscriptions, outbound delivery."""
