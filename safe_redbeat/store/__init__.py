"""Redis: key names, the shard layout, the client, and the typed gateway to the Lua
scripts that make every write."""
