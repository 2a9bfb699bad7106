"""The operator console served by `hgad-edge run`: pages and a JSON API over the agent's rooms (README, "Web
console"). Actions go through the same dispatcher as MQTT commands."""
