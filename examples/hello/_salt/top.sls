{#- spirofs serves a bundle as the saltenv "<project>/<deployment>", and Salt
    renders each environment's top file with ``saltenv`` set to that name, so
    this top file works for any project and deployment name. tojson quotes it
    safely for YAML. Applies to every minion of the master. #}
{{ saltenv|tojson }}:
  '*':
    - hello
