defmodule Scope.MixProject do
  use Mix.Project

  # The Erlang client (clients/erlang/src) is compiled into this project:
  # no dependencies, nothing fetched from Hex.
  def project do
    [
      app: :scope_tracer,
      version: "0.1.0",
      elixir: "~> 1.14",
      erlc_paths: ["../erlang/src"],
      deps: []
    ]
  end

  def application do
    [extra_applications: [:crypto]]
  end
end
