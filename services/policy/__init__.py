"""policy: answers limit checks from memory and owns limits and the directory."""
