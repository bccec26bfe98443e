"""theralake.pipelines."""
